# The demo (configs/demo/repvgg-a0_demo.py) with the GPU-decoding train loader of
# configs/repvgg-a0_gpudecode.py. On a machine without a GPU the loader decodes and
# augments on the CPU, with the same code.
_base_ = ['./repvgg-a0_demo.py']

train_dataloader = dict(
    _delete_=True,
    type='GPUDecodeLoader',
    batch_size={{_base_.batch_size}},
    num_workers=2,
    persistent_workers=True,
    dataset=dict(type='ImageNetLayoutDataset', data_root={{_base_.data_root}},
                 split='train'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    # at 32 px small crops cut away the shape that defines the class (see the demo
    # config): keep at least 35 % of the image
    crop_size={{_base_.image_size}}, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3),
    flip_prob=0.5,
)
