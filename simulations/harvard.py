"""The Harvard sentences, lists 1-10 (IEEE Recommended Practice for Speech Quality Measurements,
IEEE Trans. Audio and Electroacoustics 17(3), 1969, appendix C; public domain).

Each list of ten is phonetically balanced, so the train / held-out split is made along list
boundaries: lists 1-8 train the codec, lists 9-10 are never seen in training and measure it.
"""

from __future__ import annotations

from typing import Final

HARVARD_LISTS: Final[tuple[tuple[str, ...], ...]] = (
    (  # List 1
        "The birch canoe slid on the smooth planks.",
        "Glue the sheet to the dark blue background.",
        "It's easy to tell the depth of a well.",
        "These days a chicken leg is a rare dish.",
        "Rice is often served in round bowls.",
        "The juice of lemons makes fine punch.",
        "The box was thrown beside the parked truck.",
        "The hogs were fed chopped corn and garbage.",
        "Four hours of steady work faced us.",
        "A large size in stockings is hard to sell.",
    ),
    (  # List 2
        "The boy was there when the sun rose.",
        "A rod is used to catch pink salmon.",
        "The source of the huge river is the clear spring.",
        "Kick the ball straight and follow through.",
        "Help the woman get back to her feet.",
        "A pot of tea helps to pass the evening.",
        "Smoky fires lack flame and heat.",
        "The soft cushion broke the man's fall.",
        "The salt breeze came across from the sea.",
        "The girl at the booth sold fifty bonds.",
    ),
    (  # List 3
        "The small pup gnawed a hole in the sock.",
        "The fish twisted and turned on the bent hook.",
        "Press the pants and sew a button on the vest.",
        "The swan dive was far short of perfect.",
        "The beauty of the view stunned the young boy.",
        "Two blue fish swam in the tank.",
        "Her purse was full of useless trash.",
        "The colt reared and threw the tall rider.",
        "It snowed, rained, and hailed the same morning.",
        "Read verse out loud for pleasure.",
    ),
    (  # List 4
        "Hoist the load to your left shoulder.",
        "Take the winding path to reach the lake.",
        "Note closely the size of the gas tank.",
        "Wipe the grease off his dirty face.",
        "Mend the coat before you go out.",
        "The wrist was badly strained and hung limp.",
        "The stray cat gave birth to kittens.",
        "The young girl gave no clear response.",
        "The meal was cooked before the bell rang.",
        "What joy there is in living.",
    ),
    (  # List 5
        "A king ruled the state in the early days.",
        "Ship maps are different from those for planes.",
        "Dimes showered down from all sides.",
        "The two met while playing on the sand.",
        "The ink stain dried on the finished page.",
        "The walled town was seized without a fight.",
        "The lease ran out in sixteen weeks.",
        "A tame squirrel makes a nice pet.",
        "The horn of the car woke the sleeping cop.",
        "The heart beat strongly and with firm strokes.",
    ),
    (  # List 6
        "The pearl was worn in a thin silver ring.",
        "The fruit peel was cut in thick slices.",
        "The Navy attacked the big task force.",
        "See the cat glaring at the scared mouse.",
        "There are more than two factors here.",
        "The hat brim was wide and too droopy.",
        "The lawyer tried to lose his case.",
        "The grass curled around the fence post.",
        "Cut the pie into large parts.",
        "Men strive but seldom get rich.",
    ),
    (  # List 7
        "Always close the barn door tight.",
        "He ran half way to the hardware store.",
        "The clock struck to mark the third period.",
        "A small creek cut across the field.",
        "Cars and busses stalled in snow drifts.",
        "The set of china hit the floor with a crash.",
        "This is a grand season for hikes on the road.",
        "The dune rose from the edge of the water.",
        "Those words were the cue for the actor to leave.",
        "A yacht slid around the point into the bay.",
    ),
    (  # List 8
        "The two boys' voices echoed in the hall.",
        "The gold vase is both rare and costly.",
        "The knife was hung inside its bright sheath.",
        "The rarest spice comes from the Far East.",
        "The roof should be tilted at a sharp slant.",
        "A siege will take a lot out of the troops.",
        "The green moss grew over the stone well.",
        "The shelves were bare of both jam or crackers.",
        "Every word and phrase he speaks is true.",
        "The bombs left most of the town in ruins.",
    ),
    (  # List 9
        "Stop whistling and watch the boys march.",
        "Jerk the rope and the bell rings weakly.",
        "A clean neck means a neat collar.",
        "A new wax protects the deep scratch.",
        "The cup cracked and spilled its contents.",
        "Guess the results from the first scores.",
        "A salt pickle tastes fine with ham.",
        "The just claim got the right verdict.",
        "The purple tie was ten years old.",
        "The tree top waved in a graceful way.",
    ),
    (  # List 10
        "The spot on the blotter was made by green ink.",
        "Mud was spattered on the front of his white shirt.",
        "The cigar burned a hole in the desk top.",
        "The empty flask stood on the tin tray.",
        "A speedy man can beat this track mark.",
        "He broke a new shoelace that day.",
        "The coffee in the mug was too hot to drink.",
        "The birch trees were bare and lonely.",
        "The petals fall with every light breeze.",
        "Bring your problems to the wise chief.",
    ),
)

HARVARD_SENTENCES: Final[tuple[str, ...]] = tuple(s for lst in HARVARD_LISTS for s in lst)

# Lists 1-8 (80 sentences) for training, lists 9-10 (20 sentences) held out.
TRAIN_LIST_COUNT: Final = 8
TRAIN_SENTENCES: Final[tuple[str, ...]] = tuple(
    s for lst in HARVARD_LISTS[:TRAIN_LIST_COUNT] for s in lst
)
HELDOUT_SENTENCES: Final[tuple[str, ...]] = tuple(
    s for lst in HARVARD_LISTS[TRAIN_LIST_COUNT:] for s in lst
)
