from .demo_data import generate_demo_dataset
from .imagenet_layout import ImageNetLayoutDataset
from .loading import LoadImageChecked, image_is_complete
from .samplers import SampleSeedSampler, SeededIndex, sample_seed, seed_everything

__all__ = ['ImageNetLayoutDataset', 'LoadImageChecked', 'SampleSeedSampler', 'SeededIndex',
           'generate_demo_dataset', 'image_is_complete', 'sample_seed', 'seed_everything']
