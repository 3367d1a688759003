from .backbones import RepVGG
from .blocks import RepVGGBlock, SEBlock, fuse_conv_bn, identity_kernel
from .reparam import max_logit_difference, reparameterize_model

__all__ = ['RepVGG', 'RepVGGBlock', 'SEBlock', 'fuse_conv_bn', 'identity_kernel',
           'reparameterize_model', 'max_logit_difference']
