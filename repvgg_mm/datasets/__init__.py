from .demo_data import generate_demo_dataset
from .gpu_loader import GPUDecodeLoader
from .imagenet_layout import ImageNetLayoutDataset
from .loading import LoadImageChecked, image_is_complete
from .samplers import SampleSeedSampler, SeededIndex, sample_seed, seed_everything

__all__ = ['GPUDecodeLoader', 'ImageNetLayoutDataset', 'LoadImageChecked', 'SampleSeedSampler',
           'SeededIndex', 'generate_demo_dataset', 'image_is_complete', 'sample_seed',
           'seed_everything']
