from .backbones import RepVGG, RepVGGplus
from .blocks import RepVGGBlock, SEBlock, fuse_conv_bn, identity_kernel
from .data_preprocessor import OrderAwareClsDataPreprocessor
from .heads import RepVGGplusClsHead
from .necks import RepVGGplusAuxNeck
from .qat import QATClassifier, insert_bn
from .reparam import max_logit_difference, reparameterize_model
from .segmentors import FCNAuxHead, PSPHead, PSPNetSegmentor

__all__ = ['FCNAuxHead', 'PSPHead', 'PSPNetSegmentor', 'RepVGG', 'RepVGGplus', 'RepVGGBlock',
           'RepVGGplusAuxNeck', 'RepVGGplusClsHead', 'SEBlock', 'fuse_conv_bn',
           'identity_kernel', 'reparameterize_model', 'max_logit_difference',
           'OrderAwareClsDataPreprocessor', 'QATClassifier', 'insert_bn']
