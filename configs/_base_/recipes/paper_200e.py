# The paper's 200-epoch recipe for B2g4, B3 and B3g4 (docs/repvgg.md 3b): the 120-epoch
# recipe's optimizer and test transform, 200 epochs,
# AutoAugment, label smoothing 0.1 (kept from the arch config) and mixup.
# No official script exists for it: mixup alpha 0.2 (the value of the RepVGGplus
# recipe) and no warm-up are our choices, not the paper's statement.
_base_ = ['./paper_120e.py']

max_epochs = 200

model = dict(
    head=dict(loss=dict(_delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
                        mode='original', loss_weight=1.0)),
    train_cfg=dict(augments=dict(type='Mixup', alpha=0.2)),
)
param_scheduler = dict(warmup=0, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, dynamic_intervals=[(max_epochs - 10 + 1, 1)])

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='AutoAugment', policies='imagenet',
         hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
