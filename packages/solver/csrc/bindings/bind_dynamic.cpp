// Python bindings of the dynamic attention solver (QO comm): make_dynamic_plan and its read-only
// result types. Plan kernel arguments reuse the plan area's CalcArgs class.
#include <pybind11/stl.h>

#include <optional>

#include "bindings/bindings.hpp"
#include "bindings/range_lists.hpp"
#include "bindings/geometry_casters.hpp"
#include "dynamic/dynamic_plan.hpp"
#include "errors.hpp"

namespace py = pybind11;

namespace magi::bindings {

namespace {

std::vector<int64_t> sum_lists(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] + b[i];
  return out;
}

}  // namespace

void bind_dynamic(py::module_& m) {
  py::class_<DynReduceArgs>(m, "DynReduceArgs", R"doc(
group_reduce arguments of one rank: the transpose of a DynCastArgs. Every row received by the
cast goes back to its source: input_split_sizes / dst_index are the cast's output_split_sizes /
src_index, output_split_sizes / src_indices its input_split_sizes / dst_indices.
)doc")
      .def_readonly("input_split_sizes", &DynReduceArgs::input_split_sizes)
      .def_readonly("dst_index", &DynReduceArgs::dst_index)
      .def_readonly("output_split_sizes", &DynReduceArgs::output_split_sizes)
      .def_readonly("src_indices", &DynReduceArgs::src_indices)
      .def("__repr__", &DynReduceArgs::repr);

  py::class_<DynCastArgs>(m, "DynCastArgs", R"doc(
group_cast arguments of one rank (tokens of its local buffer). dst_indices / src_index may contain
the rank itself: locally held rows a remote slice needs are copied into the remote buffer too.
)doc")
      .def_readonly("input_split_sizes", &DynCastArgs::input_split_sizes)
      .def_readonly("dst_indices", &DynCastArgs::dst_indices)
      .def_readonly("output_split_sizes", &DynCastArgs::output_split_sizes)
      .def_readonly("src_index", &DynCastArgs::src_index)
      .def("transpose", &DynCastArgs::transpose, "The group_reduce arguments returning every received row.")
      .def("__repr__", &DynCastArgs::repr);

  py::class_<DynRankPlan, std::shared_ptr<DynRankPlan>>(m, "DynamicRankPlan",
                                                        "One rank's host calc, remote calc and Q/KV casts.")
      .def_readonly("rank", &DynRankPlan::rank)
      .def_property_readonly("host_ranges", [](const DynRankPlan& p) { return ranges_to_list(p.host_ranges); })
      .def_readonly("host_calc", &DynRankPlan::host_calc)
      .def_readonly("remote_calc", &DynRankPlan::remote_calc)
      .def_property_readonly("remote_q_ranges", [](const DynRankPlan& p) { return ranges_to_list(p.remote_q_ranges); })
      .def_property_readonly("remote_kv_ranges",
                             [](const DynRankPlan& p) { return ranges_to_list(p.remote_kv_ranges); })
      .def_readonly("num_remote_q_tokens", &DynRankPlan::num_remote_q_tokens)
      .def_readonly("num_remote_kv_tokens", &DynRankPlan::num_remote_kv_tokens)
      .def_readonly("q_cast", &DynRankPlan::q_cast)
      .def_readonly("kv_cast", &DynRankPlan::kv_cast)
      .def_property_readonly("q_reduce", [](const DynRankPlan& p) { return p.q_cast.transpose(); })
      .def_property_readonly("kv_reduce", [](const DynRankPlan& p) { return p.kv_cast.transpose(); })
      .def("__repr__", &DynRankPlan::repr);

  py::class_<DynamicPlan>(m, "DynamicPlan", "Cell assignment of every rank plus the requested ranks' plans.")
      .def_readonly("cp_size", &DynamicPlan::cp_size)
      .def_property_readonly("alg", [](const DynamicPlan& p) { return std::string(dyn_alg_name(p.params.alg)); })
      .def_readonly("feasible", &DynamicPlan::feasible)
      .def_readonly("cost", &DynamicPlan::cost)
      .def_readonly("num_head_groups", &DynamicPlan::num_head_groups)
      .def_readonly("total_seqlen", &DynamicPlan::total_seqlen)
      .def_property_readonly("num_heads_q", [](const DynamicPlan& p) { return p.params.num_heads_q; })
      .def_property_readonly("num_heads_kv", [](const DynamicPlan& p) { return p.params.num_heads_kv; })
      .def_property_readonly("flatten_head_groups", [](const DynamicPlan& p) { return p.params.flatten_head_groups; })
      .def_readonly("per_rank_area", &DynamicPlan::per_rank_area)
      .def_property_readonly("per_rank_comm",
                             [](const DynamicPlan& p) { return sum_lists(p.per_rank_comm_q, p.per_rank_comm_kv); })
      .def_readonly("per_rank_comm_q", &DynamicPlan::per_rank_comm_q)
      .def_readonly("per_rank_comm_kv", &DynamicPlan::per_rank_comm_kv)
      .def_property_readonly("built_ranks", &DynamicPlan::built_ranks)
      .def(
          "rank_plan",
          [](const DynamicPlan& p, int64_t r) {
            p.rank_plan(r);  // RangeError unless built
            return std::const_pointer_cast<DynRankPlan>(p.plans[static_cast<size_t>(r)]);
          },
          py::arg("rank"), "This rank's plan (shared, read-only); RangeError when it was not built.")
      .def(
          "buckets",
          [](const DynamicPlan& p, int64_t r) {
            std::vector<AttnSlice> slices;
            {
              py::gil_scoped_release release;
              slices = p.bucket(r);
            }
            py::list out;
            for (const auto& [q, k, t] : slices)
              out.append(py::make_tuple(py::make_tuple(q.start, q.end), py::make_tuple(k.start, k.end),
                                        mask_type_to_int(t)));
            return out;
          },
          py::arg("rank"), "Exact cells of rank r as (q_range, k_range, mask_type int) in global coordinates.")
      .def("__repr__", &DynamicPlan::repr);

  m.def(
      "make_dynamic_plan",
      [](const RangePairs& q_ranges, const RangePairs& k_ranges, const std::vector<int64_t>& mask_types,
         const DispatchMeta& dispatch_meta, const std::string& alg, int64_t num_heads_q, int64_t num_heads_kv,
         bool flatten_head_groups, double calc_cost_factor, double comm_cost_factor, int64_t seed,
         std::optional<std::vector<int64_t>> ranks) {
        const char* fn = "make_dynamic_plan()";
        DynPlanParams p;
        p.alg = dyn_alg_from_string(fn, alg);
        p.num_heads_q = num_heads_q;
        p.num_heads_kv = num_heads_kv;
        p.flatten_head_groups = flatten_head_groups;
        p.calc_cost_factor = calc_cost_factor;
        p.comm_cost_factor = comm_cost_factor;
        p.seed = seed;
        std::vector<int64_t> rs;
        if (ranks) {
          MAGI_CHECK(!ranks->empty(), fn << ": ranks=[] selects nothing; pass None for all ranks.");
          rs = *ranks;
        }
        py::gil_scoped_release release;
        return make_dynamic_plan(q_ranges, k_ranges, mask_types, dispatch_meta, p, rs);
      },
      py::arg("q_ranges"), py::arg("k_ranges"), py::arg("mask_types"), py::arg("dispatch_meta"), py::kw_only(),
      py::arg("alg") = "binary_greedy", py::arg("num_heads_q") = 1, py::arg("num_heads_kv") = 1,
      py::arg("flatten_head_groups") = false, py::arg("calc_cost_factor") = 1.0,
      py::arg("comm_cost_factor") = 1.0, py::arg("seed") = 42, py::arg("ranks") = py::none(),
      R"doc(
Dynamic attention plan (QO comm): every mask cell goes to some rank, q and/or kv move as needed.
Pure and deterministic (identical on every rank, no collectives).
)doc");
}

}  // namespace magi::bindings
