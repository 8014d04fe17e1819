// Umbrella header of the geometry area: ranges, mask types, rectangles.
#pragma once

#include "errors.hpp"
#include "geometry/mask_type.hpp"
#include "geometry/range.hpp"
#include "geometry/ranges.hpp"
#include "geometry/rectangle.hpp"
