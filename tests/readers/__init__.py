"""Tests for the source readers."""
