# Channels-last (NHWC) memory format for the model's weights and, with the
# GPU-decoding loader, its batches (the hook sets the loader's channels_last): faster
# convolutions on GPUs with tensor cores, most with --amp. Add this file to a config's
# _base_ list; it composes with the other option files (each adds its hooks under its
# own custom_hooks_<name> key, which the runner appends to custom_hooks).
custom_hooks_channels_last = [dict(type='ChannelsLastHook')]
