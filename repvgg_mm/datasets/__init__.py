from .demo_data import generate_demo_dataset
from .imagenet_layout import ImageNetLayoutDataset

__all__ = ['ImageNetLayoutDataset', 'generate_demo_dataset']
