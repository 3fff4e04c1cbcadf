"""Sub-commands of the ``pmf`` command line, one module each (discovered by ``pmf.cli``)."""
