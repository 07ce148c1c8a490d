"""CT-specific image functions shared by the pipelines."""
