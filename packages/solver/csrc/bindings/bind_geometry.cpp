// Python bindings of the geometry area: AttnRange, AttnRanges, AttnMaskType, AttnRectangle(s),
// slice_area and RangeError. A thin layer: conversions, Python protocols and docstrings only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings/bindings.hpp"
#include "bindings/geometry_casters.hpp"
#include "errors.hpp"
#include "geometry/geometry.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace magi::bindings {

namespace {

// The AttnMaskType enum class and its members in int-code order (owned for the process lifetime).
PyObject* g_mask_type_cls = nullptr;
PyObject* g_mask_type_members[4] = {nullptr, nullptr, nullptr, nullptr};

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

// (start, end) pair or AttnRange -> AttnRange; TypeError for anything else.
AttnRange range_from_py(py::handle h, const std::string& where) {
  if (py::isinstance<AttnRange>(h)) return h.cast<AttnRange>();
  if (py::isinstance<py::sequence>(h) && !py::isinstance<py::str>(h)) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(h);
    if (py::len(seq) == 2) {
      int64_t s = 0, e = 0;
      try {
        s = seq[0].cast<int64_t>();
        e = seq[1].cast<int64_t>();
      } catch (const py::cast_error&) {
        throw py::type_error(where + ": expected a pair of ints, got " + std::string(py::repr(h)) + ".");
      }
      MAGI_CHECK(s <= e, where << "=(" << s << ", " << e
                               << ") is inverted; each range needs start <= end.");
      return AttnRange(s, e);
    }
  }
  throw py::type_error(where + ": expected an AttnRange or a (start, end) pair, got " +
                       type_name(h) + " " + std::string(py::repr(h)) + ".");
}

AttnRanges ranges_from_py(py::handle h, const std::string& where) {
  if (py::isinstance<AttnRanges>(h)) return h.cast<AttnRanges>();
  if (!py::isinstance<py::iterable>(h) || py::isinstance<py::str>(h))
    throw py::type_error(where + ": expected AttnRanges or a sequence of (start, end) pairs, got " +
                         type_name(h) + ".");
  AttnRanges out;
  size_t i = 0;
  for (py::handle item : h) {
    out.append(range_from_py(item, where + "[" + std::to_string(i) + "]"));
    ++i;
  }
  return out;
}

py::ssize_t py_hash(size_t h) { return static_cast<py::ssize_t>(h); }

py::object not_implemented() { return py::reinterpret_borrow<py::object>(Py_NotImplemented); }

AttnRanges slice_of(const AttnRanges& rs, const py::slice& sl) {
  size_t start = 0, stop = 0, step = 0, len = 0;
  if (!sl.compute(rs.size(), &start, &stop, &step, &len)) throw py::error_already_set();
  AttnRanges out;
  for (size_t i = 0; i < len; ++i, start += step) out.append(rs.ranges[start]);
  return out;
}

py::list slices_to_py(const std::vector<AttnSlice>& slices) {
  py::list out;
  for (const auto& [q, k, t] : slices) out.append(py::make_tuple(q, k, mask_type_to_py(t)));
  return out;
}

void bind_mask_type(py::module_& m) {
  py::object enum_cls = py::module_::import("enum").attr("Enum");
  py::list members;
  // Declaration order of the anchor (differs from the int-code order on purpose).
  members.append(py::make_tuple("FULL", "full"));
  members.append(py::make_tuple("CAUSAL", "causal"));
  members.append(py::make_tuple("BICAUSAL", "bi_causal"));
  members.append(py::make_tuple("INVCAUSAL", "inv_causal"));
  py::object cls = enum_cls("AttnMaskType", members, "module"_a = "magi_solver._core",
                            "qualname"_a = "AttnMaskType");
  cls.attr("__doc__") =
      "Mask type of one slice. ``.value`` is the string ('full', 'causal', 'inv_causal', "
      "'bi_causal'); ``AttnMaskType('causal')`` converts a string. Int codes (kernel "
      "attn_type_map): FULL 0, CAUSAL 1, INVCAUSAL 2, BICAUSAL 3, via from_int_type/to_int_type.";
  g_mask_type_cls = cls.inc_ref().ptr();
  for (int c = 0; c < 4; ++c) {
    const char* name = mask_type_name(static_cast<MaskType>(c));
    g_mask_type_members[c] = py::object(cls.attr(name)).inc_ref().ptr();
  }
  cls.attr("to_int_type") = py::cpp_function(
      [](py::handle self) { return mask_type_to_int(mask_type_from_py(self)); },
      py::is_method(cls), py::name("to_int_type"),
      "The int code of this mask type (FULL 0, CAUSAL 1, INVCAUSAL 2, BICAUSAL 3).");
  cls.attr("from_int_type") = py::staticmethod(py::cpp_function(
      [](int64_t code) { return mask_type_from_int(code); }, py::name("from_int_type"), "int_type"_a,
      "The mask type of an int code; RangeError outside 0..3."));
  m.attr("AttnMaskType") = cls;
}

}  // namespace

// ---- the shared MaskType conversions (declared in geometry_casters.hpp) ----

py::object mask_type_to_py(MaskType t) {
  const auto c = static_cast<int>(t);
  MAGI_CHECK(g_mask_type_cls != nullptr && c >= 0 && c < 4,
             "mask_type_to_py(): AttnMaskType not bound yet or bad code " << c << ".");
  return py::reinterpret_borrow<py::object>(g_mask_type_members[c]);
}

bool is_mask_type_like(py::handle h) {
  if (g_mask_type_cls != nullptr && py::isinstance(h, py::handle(g_mask_type_cls))) return true;
  if (py::isinstance<py::str>(h)) return true;
  return py::isinstance<py::int_>(h) && !py::isinstance<py::bool_>(h);
}

MaskType mask_type_from_py(py::handle h) {
  if (g_mask_type_cls != nullptr && py::isinstance(h, py::handle(g_mask_type_cls)))
    return mask_type_from_string(h.attr("value").cast<std::string>());
  if (py::isinstance<py::str>(h)) return mask_type_from_string(h.cast<std::string>());
  if (py::isinstance<py::int_>(h) && !py::isinstance<py::bool_>(h)) {
    int64_t code = 0;
    try {
      code = h.cast<int64_t>();
    } catch (const py::cast_error&) {
      MAGI_CHECK(false, "mask type int code " << std::string(py::repr(h)) << " is out of range 0..3.");
    }
    return mask_type_from_int(code);
  }
  throw py::type_error("expected an AttnMaskType, its string value or its int code, got " +
                       type_name(h) + ".");
}

void bind_geometry(py::module_& m) {
  py::register_exception<RangeError>(m, "RangeError", PyExc_ValueError);
  bind_mask_type(m);

  // ------------------------------------------------------------------ AttnRange
  py::class_<AttnRange>(m, "AttnRange",
                        "A half-open token interval [start, end); start <= end (empty allowed).")
      .def(py::init<int64_t, int64_t>(), "start"_a, "end"_a)
      .def_static(
          "from_range",
          [](py::handle attn_range, bool /*check*/) { return range_from_py(attn_range, "AttnRange.from_range()"); },
          "attn_range"_a, "check"_a = false,
          "An AttnRange from an AttnRange (copied) or a (start, end) pair; always validated.")
      .def_property(
          "start", [](const AttnRange& r) { return r.start; }, &AttnRange::set_start)
      .def_property(
          "end", [](const AttnRange& r) { return r.end; }, &AttnRange::set_end)
      .def_property_readonly("seqlen", &AttnRange::seqlen)
      .def("__len__", &AttnRange::seqlen)
      .def("to_naive_range", &AttnRange::to_pair)
      .def("clone", [](const AttnRange& r) { return r; })
      .def("offset", &AttnRange::offset, "offset"_a)
      .def(
          "truncate",
          [](const AttnRange& r, std::optional<int64_t> s, std::optional<int64_t> e) {
            return r.truncate(s.value_or(std::numeric_limits<int64_t>::min()),
                              e.value_or(std::numeric_limits<int64_t>::max()));
          },
          "start"_a = py::none(), "end"_a = py::none(),
          "Clip to [start, end); an inverted result becomes the empty range at the clipped start.")
      .def("intersect", &AttnRange::intersect, "other"_a)
      .def("intersect_size", &AttnRange::intersect_size, "other"_a)
      .def("union", &AttnRange::union_with, "other"_a,
           "One range if they overlap, else both (empty ones dropped), ascending.")
      .def("union_size", &AttnRange::union_size, "other"_a)
      .def("diff_by", &AttnRange::diff_by, "other"_a, "other - self: the parts of other outside self.")
      .def("is_subrange_of", &AttnRange::is_subrange_of, "other"_a)
      .def("is_overlap_with", &AttnRange::is_overlap_with, "other"_a,
           "Strict overlap: touching ranges do not overlap.")
      .def("is_empty", &AttnRange::is_empty)
      .def(
          "is_valid_close",
          [](const AttnRange& r, std::optional<int64_t> s, std::optional<int64_t> e) {
            return s.value_or(r.start) <= e.value_or(r.end);
          },
          "start"_a = py::none(), "end"_a = py::none())
      .def(
          "is_valid_open",
          [](const AttnRange& r, std::optional<int64_t> s, std::optional<int64_t> e) {
            return s.value_or(r.start) < e.value_or(r.end);
          },
          "start"_a = py::none(), "end"_a = py::none())
      .def(
          "check_valid",
          [](const AttnRange& r, std::optional<int64_t> s, std::optional<int64_t> e) {
            const int64_t ss = s.value_or(r.start), ee = e.value_or(r.end);
            MAGI_CHECK(ss <= ee, "AttnRange.check_valid(): [" << ss << ", " << ee
                                                               << ") is inverted; a range needs start <= end.");
          },
          "start"_a = py::none(), "end"_a = py::none())
      .def("__eq__", [](const AttnRange& a, const AttnRange& b) { return a == b; }, py::is_operator())
      .def("__eq__", [](const AttnRange&, py::handle) { return not_implemented(); })
      .def("__lt__", [](const AttnRange& a, const AttnRange& b) { return a < b; }, py::is_operator())
      .def("__le__", [](const AttnRange& a, const AttnRange& b) { return a <= b; }, py::is_operator())
      .def("__gt__", [](const AttnRange& a, const AttnRange& b) { return a > b; }, py::is_operator())
      .def("__ge__", [](const AttnRange& a, const AttnRange& b) { return a >= b; }, py::is_operator())
      .def("__hash__", [](const AttnRange& r) { return py_hash(r.hash()); })
      .def("__repr__", &AttnRange::repr)
      .def("__copy__", [](const AttnRange& r) { return r; })
      .def("__deepcopy__", [](const AttnRange& r, py::handle) { return r; }, "memo"_a)
      .def(py::pickle([](const AttnRange& r) { return py::make_tuple(r.start, r.end); },
                      [](const py::tuple& t) {
                        MAGI_CHECK(t.size() == 2, "AttnRange.__setstate__(): expected (start, end), got "
                                                      << t.size() << " items.");
                        return AttnRange(t[0].cast<int64_t>(), t[1].cast<int64_t>());
                      }));

  // ------------------------------------------------------------------ AttnRanges
  using GilRelease = py::call_guard<py::gil_scoped_release>;
  py::class_<AttnRanges>(m, "AttnRanges",
                         "An ordered list of AttnRange with set algebra (merge, holes, overlaps, "
                         "global->local maps). Items are returned as copies.")
      .def(py::init<>())
      .def_static(
          "from_ranges",
          [](py::handle ranges, bool /*check*/) { return ranges_from_py(ranges, "AttnRanges.from_ranges(): ranges"); },
          "ranges"_a, "check"_a = false,
          "AttnRanges from AttnRanges, AttnRange items or (start, end) pairs (copied, always validated).")
      .def_static("from_cu_seqlens", &AttnRanges::from_cu_seqlens, "cu_seqlens"_a, "seq_len"_a)
      .def("to_naive_ranges", &AttnRanges::to_pairs)
      .def("to_cu_seqlens", &AttnRanges::to_cu_seqlens, "seq_len"_a)
      .def("clone", [](const AttnRanges& r) { return r; })
      .def(
          "append",
          [](AttnRanges& rs, py::handle r, bool) { rs.append(range_from_py(r, "AttnRanges.append(): attn_range")); },
          "attn_range"_a, "check"_a = false)
      .def(
          "insert",
          [](AttnRanges& rs, int64_t idx, py::handle r, bool) {
            rs.insert(idx, range_from_py(r, "AttnRanges.insert(): attn_range"));
          },
          "idx"_a, "attn_range"_a, "check"_a = false)
      .def(
          "extend",
          [](AttnRanges& rs, py::handle other, bool) {
            rs.extend(ranges_from_py(other, "AttnRanges.extend(): ranges"));
          },
          "ranges"_a, "check"_a = false)
      .def("pop", &AttnRanges::pop, "idx"_a = -1)
      .def("sort", &AttnRanges::sort, GilRelease(), "Stable sort by start (a new list).")
      .def("merge", &AttnRanges::merge, GilRelease(),
           "Sort, then join overlapping or touching ranges (a new list).")
      .def("merge_with_split_alignment", &AttnRanges::merge_with_split_alignment,
           "split_alignment"_a = 1, GilRelease())
      .def("clear_empty", &AttnRanges::clear_empty)
      .def("find_hole_ranges", &AttnRanges::find_hole_ranges, "other_attn_ranges"_a,
           "is_self_merged"_a = false, "is_other_merged"_a = false, GilRelease(),
           "self - other as token sets, merged.")
      .def("find_overlap_ranges", &AttnRanges::find_overlap_ranges, "other_attn_ranges"_a,
           "is_self_merged"_a = false, "is_other_merged"_a = false, GilRelease(),
           "self ∩ other as token sets, merged.")
      .def("make_range_local", &AttnRanges::make_range_local, "other_attn_range"_a,
           "is_self_merged"_a = false,
           "Position of a global range in the buffer holding merge(self) back to back.")
      .def("make_ranges_local", &AttnRanges::make_ranges_local, "other_attn_ranges"_a,
           "is_self_merged"_a = false, GilRelease())
      .def(
          "chunk", [](const AttnRanges& rs, int64_t chunk_size, bool) { return rs.chunk(chunk_size); },
          "chunk_size"_a, "check"_a = true, GilRelease(),
          "Consecutive groups of chunk_size tokens (a range may be split across groups).")
      .def(
          "truncate",
          [](const AttnRanges& rs, std::optional<int64_t> s, std::optional<int64_t> e) {
            return rs.truncate(s.value_or(std::numeric_limits<int64_t>::min()),
                               e.value_or(std::numeric_limits<int64_t>::max()));
          },
          "start"_a = py::none(), "end"_a = py::none(), "Clip every range to [start, end), drop empties.")
      .def("is_sorted", &AttnRanges::is_sorted)
      .def("is_merged", &AttnRanges::is_merged)
      .def("is_non_overlap", &AttnRanges::is_non_overlap)
      .def("is_cu_seqlens", &AttnRanges::is_cu_seqlens, "seq_len"_a)
      .def("is_valid", &AttnRanges::is_valid)
      .def("is_empty", &AttnRanges::is_empty)
      .def("check_valid", [](const AttnRanges& rs) {
        MAGI_CHECK(rs.is_valid(), "AttnRanges.check_valid(): " << rs.repr() << " holds an inverted range.");
      })
      .def_property_readonly("total_seqlen", &AttnRanges::total_seqlen)
      .def_property_readonly("max_seqlen", &AttnRanges::max_seqlen)
      .def_property_readonly("start", &AttnRanges::start)
      .def_property_readonly("end", &AttnRanges::end)
      .def_property_readonly("size", &AttnRanges::size)
      .def_property_readonly("points", &AttnRanges::points)
      .def("intersect_size", &AttnRanges::intersect_size, GilRelease(),
           "Tokens covered more than once, counted (coverage - 1) times.")
      .def("intersect_size_with", &AttnRanges::intersect_size_with, "other"_a, GilRelease())
      .def("union_size", &AttnRanges::union_size, GilRelease())
      .def("union_size_with", &AttnRanges::union_size_with, "other"_a, GilRelease())
      .def("__len__", &AttnRanges::size)
      .def("__getitem__", [](const AttnRanges& rs, int64_t idx) { return rs.at(idx); }, "idx"_a)
      .def("__getitem__", &slice_of, "idx"_a)
      .def(
          "__setitem__",
          [](AttnRanges& rs, int64_t idx, py::handle r) {
            AttnRange v = range_from_py(r, "AttnRanges.__setitem__(): value");
            rs.at(idx) = v;
          },
          "idx"_a, "value"_a)
      .def(
          "__setitem__",
          [](AttnRanges& rs, const py::slice& sl, py::handle value) {
            const AttnRanges v = ranges_from_py(value, "AttnRanges.__setitem__(): value");
            py::list lst;
            for (const auto& r : rs.ranges) lst.append(r);
            lst[sl] = py::cast(v.ranges);
            AttnRanges out;
            for (py::handle item : lst) out.append(item.cast<AttnRange>());
            rs = std::move(out);
          },
          "idx"_a, "value"_a)
      .def("__delitem__", [](AttnRanges& rs, int64_t idx) { rs.pop(idx); }, "idx"_a)
      .def("__iter__",
           [](const AttnRanges& rs) {
             py::list lst = py::cast(rs.ranges);
             return lst.attr("__iter__")();
           })
      .def("__eq__", [](const AttnRanges& a, const AttnRanges& b) { return a == b; }, py::is_operator())
      .def("__eq__", [](const AttnRanges&, py::handle) { return not_implemented(); })
      .def("__hash__", [](const AttnRanges& rs) { return py_hash(rs.hash()); })
      .def("__repr__", &AttnRanges::repr)
      .def("__copy__", [](const AttnRanges& r) { return r; })
      .def("__deepcopy__", [](const AttnRanges& r, py::handle) { return r; }, "memo"_a)
      .def(py::pickle([](const AttnRanges& rs) { return py::make_tuple(rs.to_pairs()); },
                      [](const py::tuple& t) {
                        MAGI_CHECK(t.size() == 1, "AttnRanges.__setstate__(): expected 1 item, got "
                                                      << t.size() << ".");
                        return AttnRanges::from_pairs(
                            t[0].cast<std::vector<std::pair<int64_t, int64_t>>>());
                      }));

  // ------------------------------------------------------------------ slice_area
  m.def(
      "slice_area",
      [](int64_t qs, int64_t qe, int64_t ks, int64_t ke, MaskType t) {
        return slice_area(AttnRange(qs, qe), AttnRange(ks, ke), t);
      },
      "q_start"_a, "q_end"_a, "k_start"_a, "k_end"_a, "mask_type"_a,
      "Exact number of visible cells of the slice [q_start, q_end) x [k_start, k_end).");
  m.def("slice_area", py::overload_cast<const AttnRange&, const AttnRange&, MaskType>(&slice_area),
        "q_range"_a, "k_range"_a, "mask_type"_a,
        "Exact number of visible cells of the slice (q_range, k_range, mask_type).");

  // ------------------------------------------------------------------ AttnRectangle
  py::class_<AttnRectangle>(m, "AttnRectangle",
                            "Cells q in q_range, k in k_range with d_lo <= k - q <= d_hi, bounds "
                            "kept tightest. Every slice and every cut of one is such a set.")
      // The default is the string form: pybind11 reprs defaults while the module initialises, and
      // the repr of the enum member crashed there under torch 2.11 (Python 3.12).
      .def(py::init<AttnRange, AttnRange, MaskType>(), "q_range"_a, "k_range"_a,
           "mask_type"_a = "full")
      .def_static("from_band", &AttnRectangle::from_band, "q_range"_a, "k_range"_a, "d_lo"_a, "d_hi"_a)
      .def_property_readonly("q_range", [](const AttnRectangle& r) { return r.q; })
      .def_property_readonly("k_range", [](const AttnRectangle& r) { return r.k; })
      .def_property_readonly("d_lo", [](const AttnRectangle& r) { return r.d_lo; })
      .def_property_readonly("d_hi", [](const AttnRectangle& r) { return r.d_hi; })
      .def("is_empty", &AttnRectangle::is_empty)
      .def("area", &AttnRectangle::area)
      .def("cut_q", &AttnRectangle::cut_q, "pos"_a)
      .def("cut_k", &AttnRectangle::cut_k, "pos"_a)
      .def("to_slices", [](const AttnRectangle& r) { return slices_to_py(r.to_slices()); },
           "At most 3 (q_range, k_range, AttnMaskType) slices with exactly the same cells.")
      .def("to_qk_range_mask_type", [](const AttnRectangle& r) { return slices_to_py(r.to_slices()); })
      .def("__eq__", [](const AttnRectangle& a, const AttnRectangle& b) { return a == b; }, py::is_operator())
      .def("__eq__", [](const AttnRectangle&, py::handle) { return not_implemented(); })
      .def("__hash__", [](const AttnRectangle& r) { return py_hash(r.hash()); })
      .def("__repr__", &AttnRectangle::repr)
      .def(py::pickle(
          [](const AttnRectangle& r) {
            return py::make_tuple(r.q.start, r.q.end, r.k.start, r.k.end, r.d_lo, r.d_hi);
          },
          [](const py::tuple& t) {
            MAGI_CHECK(t.size() == 6, "AttnRectangle.__setstate__(): expected 6 items, got " << t.size() << ".");
            return AttnRectangle::from_band(AttnRange(t[0].cast<int64_t>(), t[1].cast<int64_t>()),
                                            AttnRange(t[2].cast<int64_t>(), t[3].cast<int64_t>()),
                                            t[4].cast<int64_t>(), t[5].cast<int64_t>());
          }));

  // ------------------------------------------------------------------ AttnRectangles
  py::class_<AttnRectangles>(m, "AttnRectangles", "A list of (cell-disjoint) AttnRectangle.")
      .def(py::init<>())
      .def(py::init<std::vector<AttnRectangle>>(), "rects"_a)
      .def_static(
          "from_ranges",
          [](py::handle q_ranges, py::handle k_ranges, const std::vector<MaskType>& types) {
            return AttnRectangles::from_slices(ranges_from_py(q_ranges, "AttnRectangles.from_ranges(): q_ranges").ranges,
                                               ranges_from_py(k_ranges, "AttnRectangles.from_ranges(): k_ranges").ranges,
                                               types);
          },
          "q_ranges"_a, "k_ranges"_a, "mask_types"_a,
          "One rectangle per slice; empty slices are dropped.")
      .def_property_readonly("rects", [](const AttnRectangles& r) { return r.rects; })
      .def("append", &AttnRectangles::append, "rect"_a)
      .def("area", &AttnRectangles::area)
      .def("size", &AttnRectangles::size)
      .def("is_empty", &AttnRectangles::empty)
      .def("cut_q", &AttnRectangles::cut_q, "pos"_a, GilRelease())
      .def("cut_k", &AttnRectangles::cut_k, "pos"_a, GilRelease())
      .def("get_qo_ranges_union", &AttnRectangles::get_qo_ranges_union)
      .def("get_kv_ranges_union", &AttnRectangles::get_kv_ranges_union)
      .def("to_slices", [](const AttnRectangles& r) { return slices_to_py(r.to_slices()); })
      .def("__len__", &AttnRectangles::size)
      .def(
          "__getitem__",
          [](const AttnRectangles& rs, int64_t idx) {
            const int64_t n = static_cast<int64_t>(rs.size());
            const int64_t i = idx < 0 ? idx + n : idx;
            if (i < 0 || i >= n) throw py::index_error("AttnRectangles index " + std::to_string(idx) + " out of range");
            return rs.rects[static_cast<size_t>(i)];
          },
          "idx"_a)
      .def("__iter__",
           [](const AttnRectangles& rs) {
             py::list lst = py::cast(rs.rects);
             return lst.attr("__iter__")();
           })
      .def("__eq__", [](const AttnRectangles& a, const AttnRectangles& b) { return a == b; }, py::is_operator())
      .def("__eq__", [](const AttnRectangles&, py::handle) { return not_implemented(); })
      .def("__hash__", [](const AttnRectangles& r) { return py_hash(r.hash()); })
      .def("__repr__", &AttnRectangles::repr)
      .def(py::pickle([](const AttnRectangles& r) { return py::make_tuple(r.rects); },
                      [](const py::tuple& t) {
                        MAGI_CHECK(t.size() == 1, "AttnRectangles.__setstate__(): expected 1 item, got " << t.size() << ".");
                        return AttnRectangles(t[0].cast<std::vector<AttnRectangle>>());
                      }));
}

}  // namespace magi::bindings
