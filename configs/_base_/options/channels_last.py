# Channels-last (NHWC) memory format for the model's weights and the input batches:
# faster convolutions on GPUs with tensor cores, most with --amp. Add this file to a
# config's _base_ list.
custom_hooks = [dict(type='ChannelsLastHook')]
