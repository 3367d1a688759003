# RepVGG-A0, the specification's recipe (configs/repvgg-a0.py) with the GPU-decoding
# train loader: workers only read files; decoding (nvJPEG), random-resized crop,
# antialiased bilinear resize and flip run on the GPU in batches, overlapped with
# training (repvgg_mm/datasets/gpu_loader.py). Without a GPU the same code runs on the
# CPU. Validation and test keep the CPU pipeline of the base.
# Faster still: add '_base_/options/channels_last.py' and '_base_/options/compile.py'
# to _base_, and train with --amp.
_base_ = ['./repvgg-a0.py']

train_dataloader = dict(
    _delete_=True,
    type='GPUDecodeLoader',
    batch_size=32,  # per GPU
    num_workers=8,  # they only read bytes: fewer cores than the CPU pipeline needs
    persistent_workers=True,
    dataset=dict(type='ImageNetLayoutDataset', data_root='data/imagenet', split='train'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    # the augmentation of the base train pipeline
    crop_size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_prob=0.5,
    skip_broken=False,
)
