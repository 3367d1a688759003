from .aux_neck import RepVGGplusAuxNeck

__all__ = ['RepVGGplusAuxNeck']
