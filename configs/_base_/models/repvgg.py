# The RepVGG classifier every configs/repvgg-<arch>.py inherits: backbone -> global
# average pool -> linear (the original's classifier). An arch config sets `backbone.arch`
# and `head.in_channels` (the last stage's width, 512 * b); the values here are A0's.
# Loss: the specification's label smoothing 0.1, the original formula
# (1 - 0.1) * NLL(target) + 0.1 * mean over classes of -log p.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='RepVGG', arch='A0', out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original',
                  loss_weight=1.0),
        topk=(1, 5),
    ),
)
