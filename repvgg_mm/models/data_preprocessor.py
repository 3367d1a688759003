"""MMPretrain's classification data preprocessor, for batches in either channel order."""
from mmpretrain.models.utils.data_preprocessor import ClsDataPreprocessor

from repvgg_mm.registry import MODELS


@MODELS.register_module()
class OrderAwareClsDataPreprocessor(ClsDataPreprocessor):
    """:class:`~mmpretrain.models.utils.ClsDataPreprocessor` that reads the channel
    order a batch declares.

    MMCV's image loading gives BGR and ``to_rgb=True`` turns it into the RGB the
    weights expect. The GPU-decoding loader and the tensor pipeline
    (:class:`~repvgg_mm.datasets.LoadImageTensor`) decode to RGB and say so -- in the
    batch (``channel_order='rgb'``) or in each sample's meta information: those batches
    pass unflipped, instead of being flipped to BGR and back. Batches that declare
    nothing are treated as before, so one model takes batches of either kind.
    Arguments are :class:`ClsDataPreprocessor`'s.
    """

    @staticmethod
    def channel_order(data: dict):
        """``'rgb'``, ``'bgr'`` or None (undeclared) for a batch."""
        order = data.get('channel_order')
        samples = data.get('data_samples')
        if order is None and samples:
            order = getattr(samples[0], 'metainfo', {}).get('channel_order')
        return order if order in ('rgb', 'bgr') else None

    def forward(self, data: dict, training: bool = False) -> dict:
        order = self.channel_order(data) if isinstance(data, dict) else None
        if order is None:
            return super().forward(data, training)
        data = {k: v for k, v in data.items() if k != 'channel_order'}
        if order == 'bgr':
            return super().forward(data, training)
        if not self.to_rgb:  # a model that takes BGR: give it BGR
            data['inputs'] = data['inputs'].flip(1) if hasattr(data['inputs'], 'flip') \
                else [x.flip(0) for x in data['inputs']]
            return super().forward(data, training)
        self.to_rgb = False  # RGB already: skip the flip
        try:
            return super().forward(data, training)
        finally:
            self.to_rgb = True
