# Exponential moving average of the weights (MMEngine's EMAHook); validation and the
# saved checkpoints then use the averaged weights. Add this file to a config's _base_;
# it composes with the other option files (custom_hooks_<name> keys are appended to
# custom_hooks by the runner).
custom_hooks_ema = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
