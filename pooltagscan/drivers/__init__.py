"""Attribution of pool tags to drivers, from their binaries (`pooltagscan drivers`).

Stages, one module each, data flowing one way:

- `apis`: the pool APIs and where their tag argument is (the only such table);
- `pe`: reading and validating a driver file, imports, exports, function starts;
- `yarascan`: our YARA rules (prefilter, tag-like immediates) and the user's;
- `disasm`: one linear sweep of the code into a compact index;
- `dataflow`: the tag argument of each call followed backwards (wrappers, globals);
- `attribution`: per-file analysis, records, and the (parallel) batch;
- `render`: the drivers view on the shared writers, and its own localtag.txt format
  (`render.FORMATS`, the command's format list).

The library never prints; `pooltagscan.commands.drivers` is the command-line shell.
"""
