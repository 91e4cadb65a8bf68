"""The Transformer encoder-decoder (Vaswani et al. 2017), with public ``encode``/``decode``.

Legend: B batch, S source length, T target length, D d_model, H heads, Dh head dim,
V vocabulary.

Training calls ``forward`` (= decode of encode). Search calls ``encode`` once, then
``init_state`` and ``decode_step`` one token at a time; the state caches the encoder memory's
projected keys/values and the decoder's past keys/values, so each step costs O(t), not O(t^2).
"""

from dataclasses import dataclass, field

from torch import Tensor, nn

from mt.config import ModelConfig
from mt.model.attention import KVCache
from mt.model.embeddings import PositionalEncoding, TokenEmbedding
from mt.model.layers import DecoderLayer, EncoderLayer
from mt.model.masks import padding_mask


@dataclass
class DecoderState:
    """What step-by-step decoding carries between steps, for a batch of (B) rows."""

    memory_kv: list[tuple[Tensor, Tensor]]  # per decoder layer: (N, H, S, Dh) keys, values
    src_mask: Tensor  # (N, 1, 1, S)
    caches: list[KVCache] = field(default_factory=list)  # per decoder layer
    step: int = 0  # number of target positions decoded so far
    group: int = 1  # rows per sentence, B = N * group: beam search's K beams share one memory

    def index_select(self, index: Tensor, *, memory: bool = True) -> None:
        """Keep / reorder rows. ``memory=False`` skips the memory, for reorderings that stay
        within each sentence's beams; otherwise ``index`` keeps or drops whole groups."""
        for cache in self.caches:
            cache.index_select(index)
        if memory:
            sentences = index[:: self.group] // self.group  # (N',)
            self.memory_kv = [
                (k.index_select(0, sentences), v.index_select(0, sentences))
                for k, v in self.memory_kv
            ]
            self.src_mask = self.src_mask.index_select(0, sentences)


class Transformer(nn.Module):
    """Encoder-decoder with one embedding table shared by source, target and output layer."""

    def __init__(
        self,
        *,
        vocab_size: int,
        pad_id: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        n_encoder_layers: int,
        n_decoder_layers: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        pre_norm: bool = True,
        max_positions: int = 1024,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.max_positions = max_positions
        self.embed = TokenEmbedding(vocab_size=vocab_size, d_model=d_model, pad_id=pad_id)
        self.pos = PositionalEncoding(d_model=d_model, max_positions=max_positions, dropout=dropout)
        sizes = dict(
            d_model=d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            dropout=dropout,
            attention_dropout=attention_dropout,
            pre_norm=pre_norm,
        )
        self.encoder_layers = nn.ModuleList(EncoderLayer(**sizes) for _ in range(n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(**sizes) for _ in range(n_decoder_layers))
        # Pre-norm stacks end un-normalised; a final norm fixes the scale (post-norm needs none).
        self.encoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith("embed"):
                nn.init.xavier_uniform_(p)

    # -- encoder -------------------------------------------------------------------------------

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """src (B, S) ids, src_mask (B, 1, 1, S) -> memory (B, S, D)."""
        x = self.pos(self.embed(src))
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x)

    # -- decoder, whole sequences (training, scoring) -------------------------------------------

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """tgt_in (B, T) BOS-prefixed ids, memory (B, S, D) -> logits (B, T, V).

        Targets must be padded on the right (as mt/data/batching.py does): the causal mask is
        the decoder's only self-attention mask, so a real position sees only earlier, real ones;
        padding on the left would let real tokens attend to PAD."""
        x = self.pos(self.embed(tgt_in))
        for layer in self.decoder_layers:
            x = layer(x, layer.cross_attn.project_kv(memory), src_mask)
        return self.embed.logits(self.decoder_norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        src_mask = padding_mask(src == self.pad_id)  # (B, 1, 1, S)
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask)

    # -- decoder, one step at a time (search) ----------------------------------------------------

    def init_state(self, memory: Tensor, src_mask: Tensor, group: int = 1) -> DecoderState:
        """Project the memory (N, S, D) once per layer; empty self-attention caches for
        N * ``group`` rows (each sentence's ``group`` rows, e.g. its beams, next to each other).
        The projections are stored contiguous: every step multiplies by them, and split heads'
        strided views would be copied at every step."""
        projected = [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers]
        return DecoderState(
            memory_kv=[(k.contiguous(), v.contiguous()) for k, v in projected],
            src_mask=src_mask,
            caches=[KVCache() for _ in self.decoder_layers],
            group=group,
        )

    def decode_step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """tokens (B,) = the previous output of each row -> logits (B, V) of the next token."""
        x = self.pos(self.embed(tokens[:, None]), offset=state.step)  # (B, 1, D)
        for layer, memory_kv, cache in zip(self.decoder_layers, state.memory_kv, state.caches):
            x = layer(x, memory_kv, state.src_mask, cache=cache, group=state.group)
        state.step += 1
        return self.embed.logits(self.decoder_norm(x))[:, 0]  # (B, V)


def build_model(cfg: ModelConfig, *, vocab_size: int, pad_id: int) -> Transformer:
    """The model for a config; the vocabulary size comes from the tokenizer, not the config."""
    return Transformer(
        vocab_size=vocab_size,
        pad_id=pad_id,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        n_encoder_layers=cfg.n_encoder_layers,
        n_decoder_layers=cfg.n_decoder_layers,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        pre_norm=cfg.pre_norm,
        max_positions=cfg.max_positions,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
