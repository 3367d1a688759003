# RepVGGplus-L2pse on ImageNet, the original repository's recipe (docs/repvgg.md 3c):
# 300 epochs, lr 0.1 per 256 images (scaled to the real batch), 5 warm-up epochs then
# cosine, weight decay 4e-5 (original rule), mixup 0.2 with label smoothing 0.1,
# RandAugment (2 ops) -- train at 256, test at 320.
#
# Where this cannot match the original exactly:
# - 'raug15' is the original's timm-style RandAugment string (2 ops, magnitude 15).
#   timm clips magnitudes to its scale of 10, so 15 means full strength; we use
#   MMPretrain's RandAugment at magnitude 10 of 10 with its 'timm_increasing' op set.
#   Not checked op by op against the original's augmentation code.
# - Test at 320: short side resized to 320, centre crop 320 (crop ratio 1, as the
#   original's default test transform).
_base_ = [
    '_base_/models/repvggplus-l2pse.py',
    '_base_/datasets/imagenet_bs32.py',
    '_base_/schedules/imagenet_bs256_300e_coslr.py',
    '_base_/default_runtime.py',
]

model = dict(train_cfg=dict(augments=dict(type='Mixup', alpha=0.2)))
optim_wrapper = dict(optimizer=dict(weight_decay=4e-5))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=256, backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=10, hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageTensor'),
    dict(type='ResizeEdgeTensor', scale=320, edge='short'),
    dict(type='CenterCropTensor', crop_size=320),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
