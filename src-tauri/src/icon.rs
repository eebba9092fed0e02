//! The tray icon, drawn here in four states: a filled circle in the state's colour.

use tauri::image::Image;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Every service served by its first choice, every tunnel up.
    Good,
    /// Served, but not everywhere by the first choice, or a tunnel is down.
    Degraded,
    /// A service has no node that is up.
    Offline,
    /// The robbie-mesh service does not answer.
    NotRunning,
}

impl Look {
    fn rgb(self) -> [u8; 3] {
        match self {
            Look::Good => [31, 157, 85],
            Look::Degraded => [199, 124, 2],
            Look::Offline => [209, 47, 47],
            Look::NotRunning => [128, 128, 134],
        }
    }

    pub fn image(self) -> Image<'static> {
        const SIZE: u32 = 32;
        let [r, g, b] = self.rgb();
        let (c, radius) = (SIZE as f32 / 2.0, SIZE as f32 * 0.4);
        let mut rgba = Vec::with_capacity((SIZE * SIZE * 4) as usize);
        for y in 0..SIZE {
            for x in 0..SIZE {
                let d = ((x as f32 + 0.5 - c).powi(2) + (y as f32 + 0.5 - c).powi(2)).sqrt();
                let alpha = ((radius + 1.0 - d).clamp(0.0, 1.0) * 255.0) as u8;
                rgba.extend_from_slice(&[r, g, b, alpha]);
            }
        }
        Image::new_owned(rgba, SIZE, SIZE)
    }
}
