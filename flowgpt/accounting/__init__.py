"""Tokens and money: exact token counts (``tokens``, the only tiktoken importer), prices
(``prices``, genai-prices plus the workflow's overrides), budgets that stop a run before a
call could break them, worst-case estimates, and the cost checks of ``validate``."""
