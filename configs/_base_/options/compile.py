# torch.compile the model's training step (MMEngine's ``compile`` key). The first
# iterations are slow while it compiles; needs a C++ compiler (and Triton on GPU).
# Add this file to a config's _base_ list.
compile = True
