"""The benchmark config of issue 5: d_model 512, 8 layers, seq 128, batch 32 (a ~25M denoiser).

Sized so one train step is dominated by large matmuls ([4096, 512] × [512, 2048]); MFU on it is
read against the matmul peak measured in the same process (benchmarks/train_throughput.py).
Everything else (objective, schedule, optimizer, E2E data) is configs/base.py's (Diffusion-LM's
recipe), so the recorded figures do not move when the E2E default recipe changes.

Example:
  python benchmarks/train_throughput.py --config=configs/bench.py
  python benchmarks/train_throughput.py --config=configs/bench.py:model.dtype=bfloat16,model.remat=True
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.seq_len = 128  # Tokens per sequence.
  config.model.d_model = 512  # Transformer width.
  config.model.num_layers = 8  # Transformer blocks.
  config.model.num_heads = 8  # Head dimension 64.
  config.model.mlp_dim = 2048  # 4 × d_model.
  config.train.batch_size = 32  # 4,096 tokens per step.
  return config
