"""The command line: the headless door to the code location (``nomarr-pipeline``)."""
