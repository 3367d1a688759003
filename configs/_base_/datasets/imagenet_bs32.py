# ImageNet in the specification's layout: data/imagenet/{train,val}/<wnid>/*.JPEG, with
# train_list.txt / val_list.txt at the root when present (else the folders are used).
dataset_type = 'ImageNetLayoutDataset'
data_root = 'data/imagenet'

data_preprocessor = dict(
    # MMPretrain's ClsDataPreprocessor, also taking the RGB batches of the GPU-decoding
    # loader (they say so) without flipping them
    type='OrderAwareClsDataPreprocessor',
    num_classes=1000,
    # ImageNet mean and std in 0-255, RGB (the original normalises 0-1 images with
    # (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225): the same thing).
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)

# The specification's augmentation (PIL's: antialiased bilinear resize) on uint8 tensors
# (repvgg_mm/datasets/tensor_transforms.py): libjpeg-turbo decode into (3, H, W), torch's
# antialiased uint8 resize, no NumPy/PIL round trips -- within 2 grey levels of PIL
# and 1.5x the speed per core of the same pipeline through MMPretrain's PIL backend,
# 1.03x MMPretrain's stock OpenCV pipeline (tools/analysis/data_speed.py). Equivalent
# MMPretrain transforms, e.g. for AutoAugment/RandAugment (which work on NumPy images):
# LoadImageFromFile, RandomResizedCrop(backend='pillow', interpolation='bilinear'),
# RandomFlip.
train_pipeline = [
    dict(type='LoadImageTensor'),
    dict(type='RandomResizedCropTensor', scale=224),
    dict(type='RandomFlipTensor', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageTensor'),
    dict(type='ResizeEdgeTensor', scale=224, edge='short'),
    dict(type='CenterCropTensor', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=32,  # per GPU
    num_workers=8,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, split='train',
                 pipeline=train_pipeline),
    # DefaultSampler whose indices carry a (seed, epoch, sample) seed: augmentation that
    # does not depend on the worker's history, so kill + resume is exact
    sampler=dict(type='SampleSeedSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, split='val',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
