from .class_count import count_classes, resolve_auto_num_classes
from .demo_data import generate_demo_dataset
from .gpu_loader import GPUDecodeLoader
from .imagenet_layout import ImageNetLayoutDataset
from .loading import LoadImageChecked, image_is_complete
from .samplers import SampleSeedSampler, SeededIndex, sample_seed, seed_everything
from .tensor_transforms import (
    ArrayToImageTensor,
    CenterCropTensor,
    LoadImageTensor,
    RandomFlipTensor,
    RandomResizedCropTensor,
    ResizeEdgeTensor,
)

__all__ = ['ArrayToImageTensor', 'CenterCropTensor', 'GPUDecodeLoader', 'ImageNetLayoutDataset',
           'LoadImageChecked', 'LoadImageTensor', 'RandomFlipTensor', 'RandomResizedCropTensor',
           'ResizeEdgeTensor', 'SampleSeedSampler', 'SeededIndex', 'count_classes',
           'generate_demo_dataset', 'image_is_complete', 'resolve_auto_num_classes',
           'sample_seed', 'seed_everything']
