"""What the model sees: a text alone, or joined to an instruction by the model's template.

Documents carry an optional per-event instruction; search queries of instruction-aware models
(Qwen3-Embedding) get the query task.  Both sides of the project format through these two
functions, so a chunk's token count, the actor's input and the query lane agree.
"""

from __future__ import annotations

from workers.settings import ModelSettings


def format_query(settings: ModelSettings, model_type: str, query: str, task: str | None) -> str:
    """The string the model sees for a search query.

    Instruction-aware models (Qwen3-Embedding: ``model_type`` starting with "qwen3") get ``task`` joined
    by the instruction template (``Instruct: {task}\nQuery:{q}``), as they were trained; any other model
    (MiniLM, BERT-style encoders) gets the raw query, because a prefix it never saw only adds noise.
    """
    if task and model_type.startswith("qwen3"):
        return format_input(settings, query, task)
    return query


def format_input(settings: ModelSettings, text: str, instruction: str | None) -> str:
    """The string the model sees: ``text`` alone, or joined to ``instruction`` by the template."""
    if not instruction:
        return text
    return settings.instruction_template.format(instruction=instruction, text=text)
