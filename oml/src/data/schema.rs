//! Column names and values of OML's dataframe format, exactly as Python OML spells them.

/// Integer identity of the sample (required).
pub const LABELS_COLUMN: &str = "label";
/// Image path, relative to the dataset root or absolute (required).
pub const PATHS_COLUMN: &str = "path";
/// `train` or `validation` (required).
pub const SPLIT_COLUMN: &str = "split";
/// Whether a validation row is a query (required; empty on train rows).
pub const IS_QUERY_COLUMN: &str = "is_query";
/// Whether a validation row is in the gallery (required; empty on train rows).
pub const IS_GALLERY_COLUMN: &str = "is_gallery";
/// Optional category (e.g. the script of a glyph); metrics are also reported per category.
pub const CATEGORIES_COLUMN: &str = "category";
/// Optional sequence id: gallery items of the query's sequence are not retrieved.
pub const SEQUENCE_COLUMN: &str = "sequence";
/// Optional bounding box, left edge (all four box columns or none).
pub const X1_COLUMN: &str = "x_1";
/// Optional bounding box, right edge.
pub const X2_COLUMN: &str = "x_2";
/// Optional bounding box, top edge.
pub const Y1_COLUMN: &str = "y_1";
/// Optional bounding box, bottom edge.
pub const Y2_COLUMN: &str = "y_2";

/// The columns every OML CSV must have.
pub const REQUIRED_COLUMNS: [&str; 5] = [
    LABELS_COLUMN,
    PATHS_COLUMN,
    SPLIT_COLUMN,
    IS_QUERY_COLUMN,
    IS_GALLERY_COLUMN,
];

/// The four bounding-box columns, in OML's order.
pub const BBOX_COLUMNS: [&str; 4] = [X1_COLUMN, X2_COLUMN, Y1_COLUMN, Y2_COLUMN];

/// Value of `split` for training rows.
pub const SPLIT_TRAIN: &str = "train";
/// Value of `split` for validation rows.
pub const SPLIT_VALIDATION: &str = "validation";
