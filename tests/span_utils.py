"""Undoing span corruption in tests: the original tokens from inputs and targets."""


def fill_sentinels(inputs, targets, first_sentinel):
  """(original tokens, {sentinel: the span it replaced}): each sentinel id >= first_sentinel
  in `inputs` is replaced by the tokens that follow the same sentinel in `targets`."""
  spans, current = {}, None
  for t in targets:
    if t >= first_sentinel:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans[int(t)] if t >= first_sentinel else [int(t)])
  return out, spans
