"""The prompt template (Jinja2, sandboxed) and the loading of the operator's prompt files."""
