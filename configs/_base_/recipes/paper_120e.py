# The paper's 120-epoch recipe (docs/repvgg.md 3b): the specification's recipe (the bases
# below, as every configs/repvgg-<arch>.py) with these differences and nothing else:
# - SGD momentum 0.9 without Nesterov; weight decay 1e-4 with the paper's rule (no decay
#   on BatchNorm parameters or biases except the identity BN's weight);
# - no warm-up: cosine from 0.1 (per 256 images) to 0 per iteration, 120 epochs;
# - plain cross-entropy (no label smoothing);
# - test: resize the short side to 256, centre crop 224.
_base_ = [
    '../models/repvgg.py',
    '../datasets/imagenet_bs32.py',
    '../schedules/imagenet_bs256_300e_coslr.py',
    '../default_runtime.py',
]

max_epochs = 120

model = dict(head=dict(loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)))

optim_wrapper = dict(optimizer=dict(nesterov=False), paramwise_cfg=dict(decay_rule='paper'))
param_scheduler = dict(warmup=0, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, dynamic_intervals=[(max_epochs - 10 + 1, 1)])

test_pipeline = [
    dict(type='LoadImageTensor'),
    dict(type='ResizeEdgeTensor', scale=256, edge='short'),
    dict(type='CenterCropTensor', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
