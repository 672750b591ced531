"""The ``template`` override of Ollama's ``/api/generate``, rendered minimally.

Ollama's templates are Go templates. Corral renders the subset that prompt
templates for ``/api/generate`` use in practice, and refuses the rest with a 400
naming the action, rather than sending the model a half-rendered prompt:

- ``{{ .System }}`` and ``{{ .Prompt }}``: the request's ``system`` and ``prompt``;
- ``{{ .Response }}``: where the answer goes; the template is cut there, as
  Ollama cuts it, so the prompt ends where the model starts writing;
- ``{{ if .System }}...{{ end }}`` and ``{{ if .Prompt }}...{{ end }}`` (not nested);
- Go's whitespace trimming markers: ``{{-`` trims the text before, ``-}}`` after.
"""

from __future__ import annotations

import re

from corral.errors import InvalidRequest

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_FIELDS = (".System", ".Prompt")
SUPPORTED = (
    "{{ .System }}, {{ .Prompt }}, {{ .Response }} and "
    "{{ if .System }}/{{ if .Prompt }} ... {{ end }}"
)


def render(template: str, *, system: str, prompt: str) -> str:
    """The prompt ``template`` makes of ``system`` and ``prompt`` (up to ``.Response``)."""
    values = {".System": system, ".Prompt": prompt}
    out: list[str] = []
    condition: bool | None = None  # inside an if block: whether it renders
    trim_next = False
    pos = 0
    for match in _ACTION.finditer(template):
        trim_before, action, trim_after = match.groups()
        text = template[pos : match.start()]
        text = text.lstrip() if trim_next else text
        text = text.rstrip() if trim_before else text
        if condition is not False:
            out.append(text)
        pos, trim_next = match.end(), bool(trim_after)
        if action == ".Response":
            if condition is not None:
                raise _unsupported("{{ .Response }} inside an if block")
            return "".join(out)
        if action in _FIELDS:
            if condition is not False:
                out.append(values[action])
        elif action.startswith("if ") and action[3:].strip() in _FIELDS:
            if condition is not None:
                raise _unsupported("a nested {{ if }}")
            condition = bool(values[action[3:].strip()])
        elif action == "end" and condition is not None:
            condition = None
        else:
            raise _unsupported("{{ " + action + " }}")
    if condition is not None:
        raise InvalidRequest("template: an {{ if }} has no {{ end }}.", param="template")
    rest = template[pos:]
    out.append(rest.lstrip() if trim_next else rest)
    return "".join(out)


def _unsupported(what: str) -> InvalidRequest:
    return InvalidRequest(
        f"template: {what} is not supported; Corral renders only {SUPPORTED} "
        "(or send raw: true with the prompt already formatted).",
        param="template",
    )
