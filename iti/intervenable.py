"""pyvene's IntervenableModel, made safe to share a model with transformers' own output hooks."""
from __future__ import annotations

import contextlib
import io

from transformers import PreTrainedModel

# pyvene prints a note about an optional backend (nnsight) on import; keep users' output clean.
with contextlib.redirect_stdout(io.StringIO()):
    import pyvene as pv


class IntervenableModel(pv.IntervenableModel):
    """Before and after every call pyvene strips *all* forward hooks from the model, including the
    ones transformers (v5) installs once to collect `output_hidden_states`; transformers then keeps
    believing they are installed and returns no hidden states. Clearing its "installed" mark after
    each strip makes it reinstall them when next needed."""

    def _remove_forward_hooks(self):
        super()._remove_forward_hooks()
        for module in self.model.modules():
            if isinstance(module, PreTrainedModel) and getattr(module, "_output_capturing_hooks_installed", False):
                module._output_capturing_hooks_installed = False
