# RepVGGplus-L2pse classifier. Training time: three aux classifiers (after stage1, stage2
# and stage3_first; conv3x3 s2 + BN + ReLU + pool in the neck, linear in the head) whose
# losses are added with weight 0.1. tools/reparam.py fuses the backbone and removes them.
# Label smoothing 0.1 with the original formula; on mixup's soft targets it gives the
# original's smoothed-then-mixed targets.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='RepVGGplus', arch='L2pse', out_indices=(0, 1, 2, 4)),
    neck=dict(type='RepVGGplusAuxNeck', in_channels=(160, 320, 640)),
    head=dict(
        type='RepVGGplusClsHead',
        num_classes=1000,
        in_channels=2560,
        aux_in_channels=(160, 320, 640),
        aux_loss_weight=0.1,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original',
                  loss_weight=1.0),
        topk=(1, 5),
    ),
)
