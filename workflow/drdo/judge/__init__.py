"""LLM-judge win-rates on any OpenAI-compatible chat endpoint.

``prompts`` renders the judge's templates and reads its verdicts, ``protocol`` decides what is
judged and turns the two orders of each pair into win / tie / loss, ``client`` makes the calls
(cached, budgeted, key redacted), ``stage`` is the workflow stage (``python -m drdo judge``) and
``serve`` starts a local llama.cpp server (``python -m drdo.judge.serve``).
"""
