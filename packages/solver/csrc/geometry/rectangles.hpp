// AttnRectangles lives next to AttnRectangle (one small header); this name is kept for the layout.
#pragma once

#include "geometry/rectangle.hpp"
