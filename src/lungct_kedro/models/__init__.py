"""Network builders on top of MONAI and torchvision."""
