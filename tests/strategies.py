"""Hypothesis strategies shared by the test suites."""

from __future__ import annotations

from hypothesis import strategies as st

from wfm_orchestrator.allocator import Datanode

# --- allocator ----------------------------------------------------------------

LOCATIONS = ("la", "lb", "lc")
RESERVATION_NAMES = ("r0", "r1", "r2", "r3", "r4", "r5")

# Core ids straddle the 64-bit words of the compiled bitsets.
core_sets = st.sets(st.sampled_from([0, 1, 2, 3, 5, 8, 63, 64, 65, 127, 128, 1023]), max_size=8)
small_sizes = st.integers(0, 40)


@st.composite
def clusters(draw, max_datanodes: int = 7):
    """(datanodes, neighbours): a small inventory with locations (some None) and neighbours."""
    n = draw(st.integers(0, max_datanodes))
    datanodes = [
        Datanode(
            f"dn{i}",
            cores=draw(core_sets),
            msize=draw(small_sizes),
            ssize=draw(small_sizes),
            location=draw(st.sampled_from((*LOCATIONS, None))),
        )
        for i in range(n)
    ]
    neighbours = draw(
        st.dictionaries(
            st.sampled_from(LOCATIONS),
            st.lists(st.sampled_from((*LOCATIONS, "ld")), max_size=3),
            max_size=3,
        )
    )
    return datanodes, neighbours


# Mostly valid values, sometimes each kind of invalid one.
demand_ints = st.one_of(
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(0, 12),
    st.sampled_from([-1, 2**62, 2**62 - 1, 2000, True, 1.0, "2", None]),
)
location_lists = st.one_of(
    st.none(),
    st.lists(st.sampled_from(LOCATIONS), max_size=3),
    st.lists(st.sampled_from((*LOCATIONS, "nowhere")), max_size=2),
    st.just("la"),
)

reserve_ops = st.tuples(
    st.just("reserve"),
    st.sampled_from((*RESERVATION_NAMES, "")),
    st.one_of(st.integers(1, 3), demand_ints),
    demand_ints,
    demand_ints,
    demand_ints,
    location_lists,
)
release_ops = st.tuples(st.just("release"), st.sampled_from((*RESERVATION_NAMES, "nope")))
# restore: re-take placements seen earlier (index into the history), or a hand-made one.
restore_ops = st.tuples(
    st.just("restore"),
    st.sampled_from(RESERVATION_NAMES),
    st.one_of(
        st.integers(0, 50),
        st.lists(
            st.tuples(
                st.sampled_from(("dn0", "dn1", "dn2", "dnX")),
                st.lists(st.sampled_from([0, 1, 2, 64, 1023, 1024]), max_size=3),
                st.integers(0, 20),
                st.integers(0, 20),
            ),
            max_size=2,
        ),
    ),
)
free_ops = st.tuples(st.just("free"), st.sampled_from(("dn0", "dn1", "dn6", "dnX")))
ever_ops = st.tuples(
    st.just("can_fit_ever"),
    st.integers(1, 4),
    demand_ints,
    demand_ints,
    demand_ints,
    location_lists,
)

allocator_operations = st.lists(
    st.one_of(reserve_ops, reserve_ops, release_ops, restore_ops, free_ops, ever_ops),
    max_size=40,
)
