"""MMPretrain's classification data preprocessor, for batches in either channel order."""
from mmpretrain.models.utils.data_preprocessor import ClsDataPreprocessor

from repvgg_mm.registry import MODELS


@MODELS.register_module()
class OrderAwareClsDataPreprocessor(ClsDataPreprocessor):
    """:class:`~mmpretrain.models.utils.ClsDataPreprocessor` that reads the channel
    order a batch declares.

    MMCV's image loading gives BGR and ``to_rgb=True`` turns it into the RGB the
    weights expect. The GPU-decoding loader decodes to RGB and says so in its batches
    (``channel_order='rgb'``): those pass unflipped, instead of being flipped to BGR by
    the loader and back here. Batches without the key are treated as before, so one
    model takes the CPU pipeline's validation batches and the GPU loader's training
    batches alike. Arguments are :class:`ClsDataPreprocessor`'s.
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        order = data.get('channel_order') if isinstance(data, dict) else None
        if order not in ('rgb', 'bgr'):
            return super().forward(data, training)
        data = {k: v for k, v in data.items() if k != 'channel_order'}
        wants_rgb = self.to_rgb  # the loaders' BGR flipped to RGB
        if order == 'bgr':
            return super().forward(data, training)
        if not wants_rgb:  # a BGR model: give it BGR
            data['inputs'] = data['inputs'].flip(1)
            return super().forward(data, training)
        self.to_rgb = False
        try:
            return super().forward(data, training)
        finally:
            self.to_rgb = True
