"""The context stage (`stage`) and what it alone uses: the language-model responder."""
