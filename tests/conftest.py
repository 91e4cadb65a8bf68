import pytest
import torch

from mt.model import Transformer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_model(**overrides) -> Transformer:
    sizes = dict(vocab_size=23, pad_id=0, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=2,
                 n_decoder_layers=2, dropout=0.0, max_positions=64)
    sizes.update(overrides)
    return Transformer(**sizes).eval()
