# The embedded demo: RepVGG-A0 on the procedurally drawn 10-class data set that
# `make demo` (tools/demo.py) generates in data/demo. It inherits the real ImageNet
# config and overrides only what the small data and a small CPU need: data root, number
# of classes, image size (and with it the crops of the pipelines), epochs, batch size,
# the loaders' workers and the blocks' starting point (identity_init).
# `make demo` (data, training, fusion, tests, ONNX) takes about 3 minutes (plus the
# virtualenv's creation) on a 2-core AMD EPYC CPU with AVX2 only and ends at about 90 %
# val top-1 (89.6 % measured).
_base_ = ['../repvgg-a0.py']

data_root = 'data/demo'
num_classes = 10
image_size = 32
max_epochs = 11
batch_size = 64
# The generator's classes, in label order (sorted): stored in checkpoints as
# dataset_meta, so tools/infer.py names the predicted shape.
classes = ['bars', 'diamond', 'disk', 'frame', 'plus', 'ring', 'square', 'star', 'triangle',
           'xcross']

# Every block with an identity branch starts as an identity map (the backbone's
# identity_init): the default start, a plain 22-layer stack at init, learns this small
# task slowly -- val top-1 after 6 epochs 27 % (default) vs 80 % (identity_init), same
# recipe otherwise. The fused model is exact either way.
model = dict(backbone=dict(identity_init=True), head=dict(num_classes=num_classes, topk=(1, )))
data_preprocessor = dict(num_classes=num_classes)

# At 32 px, RandomResizedCrop's small crops cut the shape that defines the class away;
# a padded random crop plus flip keeps it and still augments.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=image_size, edge='short', backend='pillow',
         interpolation='bilinear'),
    dict(type='RandomCrop', crop_size=image_size, padding=2, padding_mode='edge'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=image_size, edge='short', backend='pillow',
         interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=image_size),
    dict(type='PackInputs'),
]

# Loading in the main process: on a 2-core CPU a loader worker competes with the two
# compute threads (measured: 0.47 s per iteration with one worker, 0.38 s without).
# The ImageNet configs keep their persistent workers (resume is exact with either).
train_dataloader = dict(
    batch_size=batch_size, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline, metainfo=dict(classes=classes)))
val_dataloader = dict(
    batch_size=batch_size, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline, metainfo=dict(classes=classes)))
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1, ))
test_evaluator = val_evaluator

# The schedule of the base, shortened: 1 warm-up epoch, cosine over the whole run.
# lr 0.1 per 256 images is rescaled to the batch automatically (auto_scale_lr).
param_scheduler = dict(warmup=1, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, val_interval=1, dynamic_intervals=None)
default_hooks = dict(logger=dict(interval=10))
