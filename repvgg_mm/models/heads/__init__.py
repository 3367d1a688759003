from .aux_head import RepVGGplusClsHead

__all__ = ['RepVGGplusClsHead']
