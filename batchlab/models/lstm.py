"""A word-level LSTM language model: the network Golmant et al. 2018 train on WikiText-2.

Golmant et al. train "an LSTM on WikiText-2" without giving its size, so the sizes are
the defaults of PyTorch's word_language_model example (examples/word_language_model,
`main.py`): a 200-dimensional embedding, 2 LSTM layers of 200 hidden units, a linear
decoder to the vocabulary, embedding and decoder untied, sequences of bptt = 35 tokens.
Initialisation is the example's too: embedding and decoder weights uniform in
[-0.1, 0.1], decoder bias 0, the LSTM's own PyTorch default (uniform in +-1/sqrt(hidden)).

Dropout (the option `dropout`, see batchlab.models.model_options) is where the example puts
it: on the embedding's output, between the LSTM layers (nn.LSTM's own `dropout`) and on the
last LSTM layer's output, each a `SeededDropout` (batchlab.models.dropout) with its own stream
of masks, so stacked runs stay independent and reproducible and a resumed run continues with
the masks it would have drawn. With dropout > 0 the LSTM is therefore one single-layer
nn.LSTM per layer (`lstm` is an nn.ModuleList; state_dict keys `lstm.0.weight_ih_l0`, ...)
with dropout between them; with dropout 0 it is one multi-layer nn.LSTM (`lstm.weight_ih_l0`,
`lstm.weight_ih_l1`, ...) as before. In eval mode the two compute the same function of the
same weights.

Deliberate differences from the example:
- The default dropout is 0 (the example's is 0.2); a study sets it.
- By default each example is one BPTT window with h0 = c0 = 0, so that examples can be drawn
  in any order like any other data set here. The example's own protocol, in which the hidden
  state flows from one batch of windows to the next (`language_model.carry_state`,
  batchlab.train.streams), goes through `carried_state`: None (the default) starts every
  forward from zeros; a pair (h, c) of (layers, N, hidden) tensors, N the forward's batch rows,
  is the forward's h0 and c0, and the forward then overwrites it in place with its final state,
  detached (truncated BPTT: no gradient flows into an earlier batch). In place, so that a step
  recorded in a CUDA graph carries it too; the forward reads a copy, so the backward still
  finds the state it used. The stacked model (batchlab.stacked) runs this same forward on its
  K members' rows, member-major, and its stacked LSTM takes and returns the state in that layout,
  so one (layers, K*B, hidden) pair carries every member's own state.

Input: token ids (B, T) int64; output: logits (B, V, T), the vocabulary on dim 1 so that
`F.cross_entropy(logits, next_tokens)` applies directly to next_tokens (B, T).
"""

from __future__ import annotations

import torch
from torch import nn

from batchlab.models.dropout import SeededDropout

EMBEDDING = 200
HIDDEN = 200
LAYERS = 2
INIT_RANGE = 0.1


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, embedding: int = EMBEDDING, hidden: int = HIDDEN, layers: int = LAYERS,
                 dropout: float = 0.0):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, embedding)
        self.lstm: nn.Module
        self.dropouts: nn.ModuleList | None = None
        if dropout == 0:
            self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        else:
            widths = [embedding] + [hidden] * layers
            self.lstm = nn.ModuleList(nn.LSTM(n_in, hidden, batch_first=True) for n_in in widths[:-1])
            # One before the first layer (the embedding's output), one after each layer.
            self.dropouts = nn.ModuleList(SeededDropout(dropout) for _ in widths)
        self.decoder = nn.Linear(hidden, vocab_size)
        self.carried_state: tuple[torch.Tensor, torch.Tensor] | None = None  # not a buffer: no state_dict entry
        nn.init.uniform_(self.encoder.weight, -INIT_RANGE, INIT_RANGE)
        nn.init.uniform_(self.decoder.weight, -INIT_RANGE, INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(tokens)  # (B, T, E)
        start = None if self.carried_state is None else tuple(s.clone() for s in self.carried_state)
        if self.dropouts is None:
            h, final = self.lstm(h, start)  # (B, T, H); start None: h0 = c0 = 0
            finals = [final]
        else:
            h = self.dropouts[0](h)
            finals = []
            for layer, (lstm, dropout) in enumerate(zip(self.lstm, self.dropouts[1:])):
                out, final = lstm(h, None if start is None else tuple(s[layer : layer + 1] for s in start))
                h = dropout(out)
                finals.append(final)
        if self.carried_state is not None:
            with torch.no_grad():
                for state, new in zip(self.carried_state, zip(*finals)):
                    state.copy_(torch.cat(new))  # layers in order: (layers, N, H)
        return self.decoder(h).transpose(1, 2)  # (B, T, V) -> (B, V, T)
