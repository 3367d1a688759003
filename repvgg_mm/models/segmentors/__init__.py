from .pspnet import FCNAuxHead, PSPHead, PSPNetSegmentor

__all__ = ['FCNAuxHead', 'PSPHead', 'PSPNetSegmentor']
