"""pimagic's benchmark suite (issues 3 and 6): `python -m bench [--quick|--full] [--only NAME]`.

Every metric is printed next to a baseline measured in the same run; see bench/README.md.
"""
