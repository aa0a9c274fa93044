"""Slurm node lists for the tests of training/slurm.py's node-list parser (unit/test_slurm.py) and of a real scontrol
(e2e/test_slurm_cluster.py): lists beside what `scontrol show hostnames` prints for each (Slurm 22.05), lists Slurm
refuses, and lists with unbalanced brackets; `hostnames`, every name a parsed list holds, as scontrol lists them."""
from training.slurm import Piece, parse_nodelist


def hostnames(nodelist: str) -> list[str]:
    """Every name of `nodelist`, in order, duplicates kept (what the product never lists: it takes first_host and
    host_count from the ranges)."""
    return [name for term in parse_nodelist(nodelist) for name in _names(term)]


def _names(pieces: list[Piece], prefix: str = ""):
    """The names of one term, in order, one at a time (the first piece's numbers outermost)."""
    if not pieces:
        yield prefix
        return
    (text, ranges), rest = pieces[0], pieces[1:]
    if not ranges:
        yield from _names(rest, prefix + text)
        return
    for first, last, width in ranges:
        for n in range(first, last + 1):
            yield from _names(rest, prefix + text + str(n).zfill(width))


# node list → what `scontrol show hostnames` prints (Slurm 22.05); test_node_lists_match_scontrol checks each
EXPANDED = {
    "gpu[001-004,017],cpu7": ["gpu001", "gpu002", "gpu003", "gpu004", "gpu017", "cpu7"],
    "a[1-2]b[3-4]": ["a1b3", "a1b4", "a2b3", "a2b4"],  # every combination, the first bracket outermost
    "n[1-2][3-4]": ["n13", "n14", "n23", "n24"],
    "rack[1-2]-node[01-02]": ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"],
    "n[9-11]": ["n9", "n10", "n11"],
    "n[08-11]": ["n08", "n09", "n10", "n11"],  # as wide as the first number
    "n[1-03]": ["n1", "n2", "n3"],
    "n[01-2]": ["n01", "n02"],
    "n[99-101]": ["n99", "n100", "n101"],
    "n[7,1-2]": ["n7", "n1", "n2"],  # order kept
    "n1,n1": ["n1", "n1"],  # duplicates kept
    "n1,n2,": ["n1", "n2"],
    ",n1": ["n1"],
    "n[1-2],,n3": ["n1", "n2", "n3"],
    "gpu-a100-[01-04]": ["gpu-a100-01", "gpu-a100-02", "gpu-a100-03", "gpu-a100-04"],
    "compute-0-[1-3]": ["compute-0-1", "compute-0-2", "compute-0-3"],
    "n[0-1],m[1-2]": ["n0", "n1", "m1", "m2"],
    "n[5]": ["n5"],
    "vm": ["vm"],
}

# lists Slurm refuses ("Invalid hostlist" or a range error, nothing printed)
REFUSED = ["n[1-3]-ib", "node[1-2].cluster", "a[1-2]b", "n[2-1]", "n[a-c]", "n[]", "n[1-2,]"]
# unbalanced brackets: scontrol prints `n]` and `n1-3]`; refused here, naming the list
UNBALANCED = ["n[1-3", "n1-3]", "n[[1-2]]"]
