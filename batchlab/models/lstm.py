"""A word-level LSTM language model: the network Golmant et al. 2018 train on WikiText-2.

Golmant et al. train "an LSTM on WikiText-2" without giving its size, so the sizes are
the defaults of PyTorch's word_language_model example (examples/word_language_model,
`main.py`): a 200-dimensional embedding, 2 LSTM layers of 200 hidden units, a linear
decoder to the vocabulary, embedding and decoder untied, sequences of bptt = 35 tokens.
Initialisation is the example's too: embedding and decoder weights uniform in
[-0.1, 0.1], decoder bias 0, the LSTM's own PyTorch default (uniform in +-1/sqrt(hidden)).

Deliberate differences from the example:
- No dropout (the example's default is 0.2): stacked members would each need their own
  stream of dropout masks to stay isolated and reproducible run by run, so dropout is left out.
- Each example is one BPTT window with h0 = c0 = 0; the hidden state is not carried from one
  window to the next as the example's sequential batches do, so that examples can be drawn in
  any order like any other data set here.

Input: token ids (B, T) int64; output: logits (B, V, T), the vocabulary on dim 1 so that
`F.cross_entropy(logits, next_tokens)` applies directly to next_tokens (B, T).
"""

from __future__ import annotations

import torch
from torch import nn

EMBEDDING = 200
HIDDEN = 200
LAYERS = 2
INIT_RANGE = 0.1


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, embedding: int = EMBEDDING, hidden: int = HIDDEN, layers: int = LAYERS):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab_size)
        nn.init.uniform_(self.encoder.weight, -INIT_RANGE, INIT_RANGE)
        nn.init.uniform_(self.decoder.weight, -INIT_RANGE, INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.encoder(tokens))  # (B, T, E) -> (B, T, H), h0 = c0 = 0
        return self.decoder(out).transpose(1, 2)  # (B, T, V) -> (B, V, T)
