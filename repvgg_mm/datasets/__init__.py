from .demo_data import generate_demo_dataset
from .imagenet_layout import ImageNetLayoutDataset
from .loading import LoadImageChecked, image_is_complete

__all__ = ['ImageNetLayoutDataset', 'LoadImageChecked', 'generate_demo_dataset',
           'image_is_complete']
