from .demo_data import generate_demo_dataset
from .gpu_loader import GPUDecodeLoader
from .imagenet_layout import ImageNetLayoutDataset
from .loading import LoadImageChecked, image_is_complete

__all__ = ['GPUDecodeLoader', 'ImageNetLayoutDataset', 'LoadImageChecked', 'generate_demo_dataset',
           'image_is_complete']
