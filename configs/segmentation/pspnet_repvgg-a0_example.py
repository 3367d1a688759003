# PSPNet on RepVGG-A0, the original repository's segmentation example (example_pspnet.py)
# as a config: the backbone starts from the published ImageNet weights (downloaded once by
# name; any checkpoint file or URL works in `checkpoint`), keeps stride 8 (stages 3 and 4
# with stride 1 and dilations 2 and 4, as PSPNet), the pyramid pooling head classifies
# every pixel, and an auxiliary head on stage 3 adds 0.4 x its loss while training.
# docs/backbone.md shows it trained, fused as a whole and reloaded fused.
default_scope = 'repvgg_mm'
custom_imports = dict(imports=['repvgg_mm'], allow_failed_imports=False)

num_classes = 19  # e.g. Cityscapes
model = dict(
    type='PSPNetSegmentor',
    backbone=dict(
        type='RepVGG', arch='A0', out_indices=(2, 3),
        strides=(2, 2, 2, 1, 1), dilations=(1, 1, 1, 2, 4),
        # read safely and strictly, from any key format; 'backbone.' picks the backbone
        # out of a whole classifier's checkpoint
        init_cfg=dict(type='Pretrained', checkpoint='repvgg-a0', prefix='backbone.')),
    decode_head=dict(type='PSPHead', in_channels=1280, num_classes=num_classes,
                     channels=512, bins=(1, 2, 3, 6), dropout=0.1),
    auxiliary_head=dict(type='FCNAuxHead', in_channels=192, num_classes=num_classes,
                        channels=256, dropout=0.1),
    aux_loss_weight=0.4,
    ignore_index=255,
    # RGB images as 0-255 tensors, normalised with the ImageNet statistics of the weights
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375]),
)
